"""What a person sees: `monitor`, `check`, run logs and the progress bar."""
