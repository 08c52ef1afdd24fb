"""Everything about the model, in layers; no HTTP (that is ``clip_http``).

* :mod:`~clip_runner.startup` — settings → model selection → runtime choice → warm-up → serving;
* :mod:`~clip_runner.serving` — the routes' logic, the micro-batcher, scoring, image references;
* :mod:`~clip_runner.runtimes` — the encoder interface, the torch and OpenVINO encoders, the choice;
* :mod:`~clip_runner.store` — store entries (read and write), registration, download, selection;
* :mod:`~clip_runner.preprocessing` — bytes → validated pixels, and the torch-free CLIP tokenizer;
* :mod:`~clip_runner.settings`, :mod:`~clip_runner.errors`, :mod:`~clip_runner.hardware` — beneath all;
* :mod:`~clip_runner.compile` and :mod:`~clip_runner.training` — leaves that nothing else imports.

``.importlinter`` holds these layers as contracts (``make lint``, ``make test``).
"""
