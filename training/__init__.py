"""Self-supervised training: teacher (BSN denoiser, SR super-resolver) and student LDN."""
