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


def main(argv):
    del argv
    from kdjax import pipeline
    from kdjax.errors import KdjaxError

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
    app.run(main)
