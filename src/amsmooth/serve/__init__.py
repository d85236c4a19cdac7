"""``amsmooth serve``: a local web page and JSON API that show the defense at work (needs ``amsmooth[serve]``).

service: the model-facing work, through the library (the SD family pipeline, AdaptiveMedianSmoothing, certify);
schemas: the validated request bodies; worker: the bounded one-at-a-time job queue; app: the FastAPI app;
static/: the page. Nothing here imports FastAPI at package import time.
"""
