"""gapscope's Gradio demo (`python -m demo --help`). It reads published runs only."""
