"""kdjax: search, distil and score smaller BERT-family students.

Usage:
  python main.py --config=configs/bert_nas.py[:tiny|:minilm] --workdir=runs/bert [--config.<field>=<value> ...]

Every setting is a config field, set on the command line with --config.<field>=<value>, for example
--config.stages=teacher,nas --config.kd.learning_rate=3e-4 --config.nas.strategy=optuna.
List every field with its current value and meaning (no --workdir needed, nothing is run):
  python main.py --config=configs/bert_nas.py:tiny --print_config
Add overrides to that command to see their effect. Variants: ':tiny' (seconds on CPU, no downloads),
':minilm' (offline MiniLM teacher and local data). The fields are defined, with comments, in kdjax/config/schema.py.
"""

import logging
import os
import signal
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config",
    None,
    "Python config file (configs/*.py[:variant]); set its fields with --config.<field>=<value>.",
    lock_config=True,
)
flags.DEFINE_string("workdir", None, "Folder for everything this run writes (resumable).")
flags.DEFINE_bool("print_config", False, "Print every --config.<field>=<value> with its meaning, then exit.")
flags.mark_flags_as_required(["config"])


def _override_error(e: BaseException) -> str | None:
    """'unknown config field kd.learnin_rate ...; did you mean --config.kd.learning_rate?' for a mistyped override."""
    from kdjax.config_help import unknown_field

    # The innermost KeyError holds the bare missing name (the outer ones paste a suggestion into a repr).
    key, seen = None, e
    while seen is not None:
        if isinstance(seen, KeyError) and seen.args:
            key = str(seen.args[0])
        seen = seen.__cause__ or seen.__context__
    flag = FLAGS["config"]
    arg = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith(("--config=", "-config="))), None)
    try:
        config = flag.parser.parse(arg) if arg else None
    except Exception:
        config = None
    paths = [a.split("=", 1)[0].split(".", 1)[1] for a in sys.argv[1:] if a.lstrip("-").startswith("config.")]
    for path in paths:
        if config is not None:
            message = unknown_field(config, path)
            if message:
                return message
        elif key and key in path.split("."):
            return f"unknown config field {path} (--config.{path})"
    return None


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
        return _override_error(e) or "unknown config field in a --config.* override (list them with --print_config)"
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
    if FLAGS.print_config:
        from kdjax.config_help import describe

        try:
            print("\n".join(describe(FLAGS.config)))
            sys.stdout.flush()
        except BrokenPipeError:
            # `--print_config | head` closed the pipe: point stdout at /dev/null so the exit flush does not fail.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    if not FLAGS.workdir:
        print("kdjax: error: --workdir is required (the folder this run writes to)", file=sys.stderr)
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
    # Everything is written. A signal during the libraries' exit clean-up (jax clears its caches in an atexit hook)
    # would print a KeyboardInterrupt traceback or end a finished run with SIGTERM's status: end at once, successfully.
    sys.stdout.flush()
    sys.stderr.flush()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: os._exit(0))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
