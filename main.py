"""kdjax command line: `python main.py --config=configs/bert_nas.py[:tiny|:minilm] --workdir=runs/bert`."""

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Python config file (configs/*.py[:variant]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for everything this run writes (resumable).")
flags.mark_flags_as_required(["config", "workdir"])


def _flag_error(e: BaseException) -> str:
    """One line for a command-line error: our own error when the config file raised one, else absl's message."""
    from kdjax.errors import KdjaxError

    # The deepest KdjaxError in the chain: ml_collections re-raises ours with a traceback pasted into the message.
    seen, ours = e, None
    while seen is not None:
        ours = seen if isinstance(seen, KdjaxError) else ours
        seen = seen.__cause__ or seen.__context__
    if ours is not None:
        return str(ours).strip().splitlines()[0]
    if isinstance(e, (AttributeError, KeyError)):
        return f"unknown config field {str(e).strip(chr(34))} in a --config.* override"
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    # ml_collections' config-load errors end with the reason (e.g. "[Errno 2] No such file ...").
    return f"{lines[0]} {lines[-1]}" if len(lines) > 1 and isinstance(e, OSError) else (lines or [repr(e)])[0]


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, but a bad flag or config file ends with one line and exit status 2, not a traceback."""
    try:
        rest = FLAGS(argv)
        # A config file that failed to load only raises when it is first read.
        FLAGS.config.get("stages")
    except Exception as e:
        print(f"kdjax: error: {_flag_error(e)}", file=sys.stderr)
        sys.exit(2)
    return rest


def main(argv):
    del argv
    try:
        from kdjax import pipeline
        from kdjax.errors import KdjaxError
    except KeyboardInterrupt:
        print(
            "kdjax: error: interrupted before any stage started; run the same command to start again", file=sys.stderr
        )
        sys.exit(2)

    # Our progress lines at INFO; library chatter (orbax, absl, transformers) only from WARNING up.
    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    kd_log = logging.getLogger("kdjax")
    kd_log.setLevel(logging.INFO)
    kd_log.addHandler(handler)
    kd_log.propagate = False
    try:
        pipeline.run(FLAGS.config, FLAGS.workdir)
    except KdjaxError as e:
        print(f"kdjax: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
