"""The encoder interface (:mod:`.encoder`), its two runtimes, each the serving side's only home of
its library (:mod:`.torch_encoder`, :mod:`.openvino_encoder`), and the choice between them
(:mod:`.choice`)."""
