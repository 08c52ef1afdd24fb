"""Everything about the model, in layers, top to bottom: ``startup``; ``serving``; ``runtimes``;
``store``; ``preprocessing``; ``settings``, ``errors``, ``hardware``. ``compile`` and ``training``
are leaves that nothing else imports. No HTTP here (that is ``clip_http``). README "Layers" says
what each owns; ``pyproject.toml``'s import-linter contracts hold them (``make lint``, ``make test``)."""
