"""The wire contract shared by the control plane and the guest agent.

Imports neither `functions` nor SQLAlchemy (checked by tests/test_architecture.py).
"""
