"""Entry points: the ``asr`` command line, the Gradio UI and the live-caption websocket server."""
