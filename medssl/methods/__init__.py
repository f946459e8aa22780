"""One LightningModule per method, composing losses from medssl.losses and blocks from medssl.nn."""
