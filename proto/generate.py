"""Generate Python code, .pyi stubs and a descriptor image from proto/.

Why not `buf generate`: buf fetches `buf.build/bufbuild/protovalidate` from the Buf Schema Registry, which
CI cannot reach. The protovalidate wheel already carries the compiled descriptor of
`buf/validate/validate.proto`, so we hand that descriptor to protoc with `--descriptor_set_in` and need no
network at all. The image written here is what `buf lint` and `buf breaking` check.

    python proto/generate.py                      # build/gen (python) + build/omo.binpb (image)
    python proto/generate.py --image-only SRC OUT # image of another checkout's proto/ (buf breaking)
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import pathlib
import sys

from google.protobuf import any_pb2, descriptor_pb2, duration_pb2, field_mask_pb2, timestamp_pb2
from google.rpc import status_pb2
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"


def validate_descriptor() -> bytes:
    """The serialized FileDescriptorProto of buf/validate/validate.proto shipped inside protovalidate."""
    spec = importlib.util.find_spec("protovalidate._gen.buf.validate.validate_pb")
    if spec is None or spec.origin is None:
        sys.exit("protovalidate is not installed")
    tree = ast.parse(pathlib.Path(spec.origin).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            if node.value[:40].find(b"buf/validate/validate.proto") >= 0:
                return node.value
    sys.exit("could not find the validate.proto descriptor inside protovalidate")


def write_deps(path: pathlib.Path) -> None:
    fds = descriptor_pb2.FileDescriptorSet()
    # google/rpc/status.proto (batch RPCs answer each item with its own Status) comes from googleapis-common-protos.
    for module in (descriptor_pb2, duration_pb2, field_mask_pb2, timestamp_pb2, any_pb2, status_pb2):
        module.DESCRIPTOR.CopyToProto(fds.file.add())
    fds.file.add().ParseFromString(validate_descriptor())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(fds.SerializeToString())


def proto_files(src: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(src)) for p in (src / "omo").rglob("*.proto"))


def run(args: list[str]) -> None:
    if protoc.main(["protoc", *args]) != 0:
        sys.exit("protoc failed")


def image(src: pathlib.Path, out: pathlib.Path, deps: pathlib.Path) -> None:
    files = proto_files(src)
    if not files:
        sys.exit(f"no .proto files under {src}/omo")
    run([f"--descriptor_set_in={deps}", f"-I{src}", "--include_imports", "--include_source_info", f"-o{out}", *files])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image-only", nargs=2, metavar=("SRC", "OUT"))
    ns = parser.parse_args()
    deps = BUILD / "deps.binpb"
    write_deps(deps)
    if ns.image_only:
        image(pathlib.Path(ns.image_only[0]), pathlib.Path(ns.image_only[1]), deps)
        return
    gen = BUILD / "gen"
    gen.mkdir(parents=True, exist_ok=True)
    src = ROOT / "proto"
    files = proto_files(src)
    outs = [f"--python_out={gen}", f"--pyi_out={gen}"]
    run([f"--descriptor_set_in={deps}", f"-I{src}", *outs, "buf/validate/validate.proto"])
    run([f"--descriptor_set_in={deps}", f"-I{src}", *outs, f"--grpc_python_out={gen}", *files])
    image(src, BUILD / "omo.binpb", deps)
    print(f"generated {len(files)} proto files into {gen.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
