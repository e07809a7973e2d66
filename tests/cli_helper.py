"""An entrypoint for tests/test_cli.py that raises on demand, to test compdiff.cli.run itself.

    python tests/cli_helper.py --error=zero|value|busy

``zero`` is a bug (ZeroDivisionError: traceback, not status 2); ``value`` a
user error; ``busy`` a :class:`compdiff.workdir.WorkdirInUse`.
"""

from absl import flags

from compdiff import cli

_ERROR = flags.DEFINE_enum("error", "zero", ["zero", "value", "busy"], "What main raises.")


def main(argv: list[str]) -> None:
    del argv
    if _ERROR.value == "value":
        raise ValueError("a bad value\nspread over two lines")
    if _ERROR.value == "busy":
        from compdiff import workdir

        raise workdir.WorkdirInUse("runs/x is in use by pid 1 on host h")
    print(1 / 0)


if __name__ == "__main__":
    cli.run(main)
