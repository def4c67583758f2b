"""Speech side of the model: audio IO, the Whisper audio encoder and its weights, projector and adapter."""
