"""``prunekit encrypt`` / ``prunekit decrypt``: AES-256-GCM at rest (the key from a file or env, never an argument).

Example::

    prunekit encrypt --generate-key model.key          # 32 random bytes as hex, mode 0600
    prunekit encrypt models/mlp/1/model.onnx --key-file model.key    # writes model.onnx.enc
    PRUNEKIT_ENCRYPTION_KEY=$(cat model.key) prunekit decrypt model.onnx.enc --out /tmp/model.onnx
"""

from __future__ import annotations

import argparse


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from prunekit.artifacts.signing import ENCRYPTION_KEY_ENV

    parser.add_argument("file", nargs="?", metavar="FILE", help="the file to encrypt (writes FILE.enc) or decrypt (FILE.enc)")
    parser.add_argument("--out", metavar="PATH", help="where the result goes (default: FILE.enc / FILE without .enc)")
    parser.add_argument(
        "--key-file", metavar="KEY", help=f"256-bit key as 64 hex digits; default: ${ENCRYPTION_KEY_ENV} (hex or base64)"
    )
    if parser.prog.endswith("encrypt"):
        parser.add_argument("--generate-key", metavar="KEY", help="write a new random key to KEY (mode 0600), then exit")
        parser.add_argument("--remove-plaintext", action="store_true", help="delete FILE once FILE.enc is written and checked")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prunekit.artifacts import signing
    from prunekit.errors import ConfigError

    if args.command == "encrypt" and args.generate_key:
        print(f"key written to {signing.write_encryption_key(args.generate_key)} (keep it secret)")
        return 0
    if not args.file:
        raise ConfigError(f"name the FILE to {args.command}")
    key = signing.load_encryption_key(args.key_file)
    if args.command == "decrypt":
        print(f"decrypted {args.file} -> {signing.decrypt_file(args.file, key, args.out)}")
        return 0
    target = signing.encrypt_file(args.file, key, args.out)
    if args.remove_plaintext:
        # read back and decrypt before the only plaintext copy goes
        if signing.decrypt_bytes(target.read_bytes(), key, str(target)) != Path(args.file).read_bytes():
            raise ConfigError(f"{target} does not decrypt to {args.file}; the plaintext was kept")
        Path(args.file).unlink()
    print(f"encrypted {args.file} -> {target}")
    return 0
