"""The tally of the Python test scripts (interop/interop.py, deploy/test.py,
deploy/k8s/check.py): one PASS or FAIL line per check, and at the end the
line CI reads, "N passed, M failed"."""


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        """Counts one check; a failure shows `detail`, a pass only a short one."""
        if ok:
            self.passed += 1
            shown = f" ({detail})" if detail and len(detail) < 160 else ""
            print(f"PASS {name}{shown}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL {name}: {detail}", flush=True)
        return ok

    def finish(self):
        """Prints the closing line; the exit status: 1 if any check failed or
        none ran."""
        print(f"{self.passed} passed, {self.failed} failed", flush=True)
        return 1 if self.failed or not self.passed else 0
