"""``prunekit sign`` / ``prunekit verify``: Ed25519 signatures beside artifacts (keys from files or env, never arguments).

Example::

    prunekit sign --generate-key signing.pem          # writes signing.pem (0600) and signing.pub.pem
    prunekit sign models/mlp/1/model.onnx --key-file signing.pem
    prunekit verify models/mlp/1/model.onnx --public-key signing.pub.pem
"""

from __future__ import annotations

import argparse


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from prunekit.artifacts.signing import PUBLIC_KEY_ENV, SIGNING_KEY_ENV

    parser.add_argument("files", nargs="*", metavar="FILE", help="artifacts to sign or verify (FILE.sig goes beside each)")
    if parser.prog.endswith("sign"):
        parser.add_argument(
            "--key-file", metavar="PEM", help=f"Ed25519 private key (PEM); default: the PEM text in ${SIGNING_KEY_ENV}"
        )
        parser.add_argument(
            "--generate-key", metavar="PEM", help="write a new Ed25519 key pair to PEM and PEM's .pub.pem, then exit"
        )
    else:
        parser.add_argument(
            "--public-key", metavar="PEM", help=f"Ed25519 public key (PEM); default: the PEM text in ${PUBLIC_KEY_ENV}"
        )


def run(args: argparse.Namespace) -> int:
    from prunekit.artifacts import signing
    from prunekit.errors import ConfigError

    if args.command == "sign" and args.generate_key:
        public = signing.generate_signing_key(args.generate_key)
        print(f"private key: {args.generate_key} (keep it secret)\npublic key: {public}")
        return 0
    if not args.files:
        raise ConfigError(f"name at least one FILE to {args.command}")
    if args.command == "sign":
        key = signing.load_private_key(args.key_file)
        for file in args.files:
            print(f"signed {file}: {signing.sign_file(file, key)}")
        return 0
    public_key = signing.load_public_key(args.public_key)
    for file in args.files:
        document = signing.verify_file(file, public_key)
        print(f"{file}: signature OK (key {document.get('key_id', '?')}, {len(document['files'])} file(s))")
    return 0
