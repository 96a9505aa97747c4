"""Command-line faces of ParetoSlider: training, sampling and evaluation (thin layers over pslider_core)."""
