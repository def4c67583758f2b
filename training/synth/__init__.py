"""Synthetic English speech for training the speech adapter: text corpus, TTS voices, augmentation."""
