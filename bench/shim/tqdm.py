"""A stand-in for tqdm where the GPU machine's image lacks it (it promises pandas, matplotlib and pytest
only): the bench scripts fall back to it, and bench/gpu_session.sh puts this folder on PYTHONPATH for the
XMC trainer when `import tqdm` fails. It prints a line at the start, every 10% and at the end instead of
a bar; only the calls the bench scripts and the trainer make exist."""

import sys
import time


class tqdm:  # tqdm's own (lower-case) name
    def __init__(self, iterable=None, total=None, desc="", unit="it", disable=False, **_):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.disable = total, desc or "", unit, disable
        self.n, self._shown, self._start, self._postfix = 0, -1, time.perf_counter(), ""
        self._show()

    def _show(self, force: bool = False) -> None:
        if self.disable:
            return
        tenth = int(10 * self.n / self.total) if self.total else 0
        if force or tenth != self._shown:
            self._shown = tenth
            of = f"/{self.total}" if self.total else ""
            elapsed = time.perf_counter() - self._start
            print(
                f"{self.desc}: {self.n}{of} {self.unit} in {elapsed:.0f} s {self._postfix}".rstrip(),
                file=sys.stderr,
                flush=True,
            )

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        self._show()

    def set_postfix(self, **values) -> None:
        self._postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        if not self.disable and self._shown != 10:
            self._shown = 10
            self._show(force=True)
        self.disable = True

    @staticmethod
    def write(message: str, file=None) -> None:
        print(message, file=file or sys.stdout, flush=True)
