"""Web service: HTTP API (search, playback, download, users) over the node's services."""
