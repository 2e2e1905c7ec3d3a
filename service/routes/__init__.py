"""One router module per concern; ``service.app.ROUTERS`` lists them (add a module, add a line)."""
