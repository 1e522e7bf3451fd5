"""Where text and evaluation items come from: corpus sources and task sources."""
