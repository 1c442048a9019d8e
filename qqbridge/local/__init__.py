"""Local infrastructure for the end-to-end tests and the demo: a real Synapse on loopback."""

from qqbridge.local.synapse import LocalSynapse, SynapseError, SynapseStartError

__all__ = ["LocalSynapse", "SynapseError", "SynapseStartError"]
