"""The encoder interface, its torch and OpenVINO runtimes, and the choice between them (README, "Layers")."""
