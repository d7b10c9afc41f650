"""The HTTP edge: the app, its middleware and every endpoint."""
