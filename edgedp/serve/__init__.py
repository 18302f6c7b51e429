"""Serving a policy to robots over the network (Ray Serve): wire format, server, client. See docs/serve.md."""
