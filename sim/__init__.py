"""Hybrid-rig simulator: spike streams, blurry RGB exposures and ground truth from images."""
