"""`qqbridge demo`: a working bridge on loopback to try from Element, in one command.

- `run`: the subcommand's arguments and the demo's life cycle (which processes start,
  in what order, the banner, and a clean stop).
- `workdir`: what the demo keeps in its working directory between runs.
- `friends`: the scripted QQ friends (Echo Bot, Moody, Newcomer), played through the
  protocol like any QQ client.
- `fixture.yaml`: the demo's QQ accounts, served by the simulator.
"""
