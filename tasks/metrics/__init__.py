"""Image-quality metrics of the BigGAN task (helpers: not tasks)."""
