"""The model layer: the char-RNN and FastGRU, its losses and metrics, starting weights (files, pretraining), and
the text generator."""
