"""Live captions: a streaming segmenter, one decoder session per stream, a fair model worker and
the websocket server that speaks the protocol of README ("Live captions")."""
