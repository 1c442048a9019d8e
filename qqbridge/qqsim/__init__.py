"""qq-sim: a server speaking the QQ HTTP protocol 1.1 (docs/protocol.md) from a fixture.

For tests, demos and benchmarks, so the bridge can run without Tencent's server::

    from qqbridge.qqsim import Simulator, load_fixture

    async with Simulator("accounts.yaml", port=0, time_scale=0.01) as sim:
        ...  # POST to sim.url

Modules: `wire` (body grammar), `fixture` (accounts file), `world` (state and rules),
`commands` (judging and the eleven commands), `server` (HTTP and `Simulator`), `cli`.
It shares no code with the client in `qqbridge.qq`, on purpose.
"""

from qqbridge.qqsim.fixture import Account, Fixture, FixtureError, load_fixture
from qqbridge.qqsim.server import Simulator
from qqbridge.qqsim.world import QUIRKS, World

__all__ = ["Account", "Fixture", "FixtureError", "QUIRKS", "Simulator", "World", "load_fixture"]
