"""Wire types shared by the control plane and the runner.

Imports neither side: both import it. Only the standard library is used here so that a
runner-only or control-plane-only install can always load it.
"""
