"""Stop strings: incremental detection on one request's detokenized stream (stop token ids are the engine's
business: they need no text)."""

from __future__ import annotations

__all__ = ["StopChecker"]


class StopChecker:
    """Incremental stop-string detection for one request's detokenized stream.

    Text is released as soon as it cannot be the beginning of a stop string; a suffix
    that could still grow into one is held back until the next delta decides it.

    Args:
        stop: stop strings (non-empty).  With none, every delta passes straight through.
    """

    def __init__(self, stop: list[str]) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self.stop = list(stop)
        self._held = ""
        self._max_hold = max((len(s) for s in self.stop), default=1) - 1
        #: True once a stop string has been found; later updates return ("", True).
        self.stopped = False
        #: The stop string that ended the stream (OpenAI's ``stop_reason``), or None.
        self.matched: str | None = None

    def update(self, new_text: str) -> tuple[str, bool]:
        """Feed the next detokenized delta.

        Returns:
            ``(text, hit)``: ``text`` is safe to emit now; if ``hit``, a stop string was
            found and ``text`` ends exactly before it (the stop string and anything after
            it are dropped).
        """
        if self.stopped:
            return "", True
        buf = self._held + new_text
        if not self.stop:
            return buf, False
        # Earliest match over all stop strings.  Any match must start inside the held
        # text or the new delta: text already emitted was, by construction, not a
        # prefix of any stop string, so no stop string can straddle it.
        first = -1
        for s in self.stop:
            j = buf.find(s)
            if j != -1 and (first == -1 or j < first):
                first, self.matched = j, s
        if first != -1:
            self.stopped = True
            self._held = ""
            return buf[:first], True
        hold = self._partial_suffix_len(buf)
        self._held = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        """Return held-back text at the end of the stream (empty if stopped)."""
        out, self._held = self._held, ""
        return "" if self.stopped else out

    def _partial_suffix_len(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a stop string."""
        # Check longest first; a shorter suffix can match when a longer one does not,
        # so every length must be tried, not just until the first failure.
        for n in range(min(len(buf), self._max_hold), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0
