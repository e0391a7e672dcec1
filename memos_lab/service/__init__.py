"""The MOS as a service: an HTTP API (`serve`) and an MCP server (`mcp`) over one durable MOS root."""
