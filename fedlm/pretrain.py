"""`python -m fedlm.pretrain [pretrain.corpus=path.txt] [model=...]`: build (or reuse) the cached pretrained model
and print its path."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from fedlm.conf import checks, composition, schema
from fedlm.errors import ConfigError
from fedlm.fl import runtime


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _main(cfg: DictConfig) -> None:
    try:
        checks.validate(cfg)
        from fedlm.model import pretrain

        with runtime.startup("during pretraining: stopped (the model is cached only once complete)"):
            path = pretrain.pretrained_model_path(
                cfg.model, cfg.pretrain, cfg.data.proxy_genres, cfg.cache_dir, seed=cfg.seed
            )
        print(path)
    except ConfigError as e:
        print(f"fedlm: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    schema.register()
    composition.exit_on_bad_command_line("config", sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
