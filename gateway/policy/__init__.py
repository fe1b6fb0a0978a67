"""Policies and registrations as data, and the pure decision engine over them."""
