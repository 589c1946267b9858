"""The encoder and projection head, backbones, precision, patch geometry and dense patch encoding."""
