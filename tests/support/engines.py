"""Settings shared by the tests that grade through a real CPU vLLM engine (marker ``slow``)."""

#: The feedback's length bound (``ProviderConfig.feedback_max_chars``) in the engine tests that
#: build their own provider config. SmolLM2-135M fills the default 200 characters with repeats
#: ("1.1.1.…", ≈ 240 tokens an item at ≈ 6 tokens/s a stream on one core): 40 characters keep the
#: structured-output path under test (the grammar still bounds the string) at a fifth of the decoding.
FEEDBACK_MAX_CHARS = 40
