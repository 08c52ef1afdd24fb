"""The HTTP side: the app (:mod:`.app`), its guards (:mod:`.middleware`), the native routes and the
OpenAI dialect over shared helpers (:mod:`.common`), request schemas (:mod:`.schemas`), and the
in-process app (:mod:`.local`). It reaches ``clip_runner`` only through its serving surface."""
