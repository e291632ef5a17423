"""Wire compatibility of our binaries with Python grpcio (gRPC's C core).

Run by interop/run.sh, which prepares the virtual environment, the stubs
generated from proto/ecommerce.proto, throw-away keys and the binaries:

    python interop/interop.py --bin-dir target/debug --keys DIR --stubs DIR

Every process started here listens on 127.0.0.1 and is stopped at the end.
Prints one line per check and ends with "N passed, M failed"; exits 1 if any
check failed.
"""

import argparse
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
# The shared Service of scripts/, found through the path above.
from checks import Checks  # noqa: E402
from services import TIMEOUT, start_discount  # noqa: E402
from services import start_catalog as start_our_catalog  # noqa: E402

SEED_CUSTOMER_1 = (
    '[{"id":1,"slug":"iphone-x","description":"64GB, black and iOS 12","price_in_cents":99999,'
    '"discount_value":{"pct":0.1,"value_in_cents":89999}},'
    '{"id":2,"slug":"notebook-avell-g1511","description":"Notebook Gamer Intel Core i7","price_in_cents":150000,'
    '"discount_value":{"pct":0.1,"value_in_cents":135000}},'
    '{"id":3,"slug":"playstation-4-slim","description":"1TB Console","price_in_cents":32999,'
    '"discount_value":{"pct":0.1,"value_in_cents":29699}}]\n'
)
SEED_PRODUCTS = [
    (1, "iphone-x", "64GB, black and iOS 12", 99999, 89999),
    (2, "notebook-avell-g1511", "Notebook Gamer Intel Core i7", 150000, 135000),
    (3, "playstation-4-slim", "1TB Console", 32999, 29699),
]



def issue_client(keys, name, identity):
    """A client certificate from the keys' CA carrying the workload identity
    `identity`, written to keys/NAME.pem and keys/NAME.key, with openssl as
    scripts/gen-keys.sh makes the catalog's."""
    key, csr, cert, ext = (f"{keys}/{name}.{suffix}" for suffix in ("key", "csr", "pem", "ext"))
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                f"extendedKeyUsage=clientAuth\nsubjectAltName=DNS:{name},URI:{identity}\n")
    for command in (
        ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key],
        ["openssl", "req", "-new", "-key", key, "-subj", f"/CN={name}", "-out", csr],
        ["openssl", "x509", "-req", "-in", csr, "-CA", f"{keys}/ca.pem", "-CAkey", f"{keys}/ca.key",
         "-set_serial", "0x1" + os.urandom(8).hex(), "-days", "1", "-sha256", "-extfile", ext, "-out", cert],
    ):
        subprocess.run(command, check=True, capture_output=True)


def start_catalog(bin_dir, keys, discount_port):
    return start_our_catalog(bin_dir, keys, discount_port, ("--discount-deadline", "5s"), log_level="info")


def http_get(port, path, user_id=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if user_id is not None:
        request.add_header("X-USER-ID", user_id)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.headers.get("X-Discount-Status"), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("X-Discount-Status"), error.read().decode()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--keys", required=True)
    parser.add_argument("--stubs", required=True)
    args = parser.parse_args()
    sys.path.insert(0, args.stubs)
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    # gRPC's C core logs the handshake it loses on purpose below (the client
    # without a certificate) as errors; the checks report what matters.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    import discount_server
    import ecommerce_pb2
    import ecommerce_pb2_grpc

    def read(name):
        with open(f"{args.keys}/{name}", "rb") as f:
            return f.read()

    def channel(port, with_certificate=True, client="client"):
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read("ca.pem"),
            private_key=read(f"{client}.key") if with_certificate else None,
            certificate_chain=read(f"{client}.pem") if with_certificate else None,
        )
        # The server certificate names localhost; we dial the IPv4 loopback.
        options = [("grpc.ssl_target_name_override", "localhost")]
        return grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options)

    def apply(stub, customer_id, product_id, slug, description, price):
        request = ecommerce_pb2.DiscountRequest(
            customer=ecommerce_pb2.Customer(id=customer_id, first_name="John", last_name="Snow"),
            product=ecommerce_pb2.Product(id=product_id, slug=slug, description=description, price_in_cents=price),
        )
        return stub.ApplyDiscount(request, timeout=TIMEOUT).product

    checks = Checks()
    started = []
    try:
        # 1. A grpcio client against our discount, over mutual TLS.
        discount = start_discount(args.bin_dir, args.keys, log_level="info")
        started.append(discount)
        with channel(discount.port) as ch:
            stub = ecommerce_pb2_grpc.DiscountStub(ch)
            for product_id, slug, description, price, expected in SEED_PRODUCTS:
                got = apply(stub, 1, product_id, slug, description, price)
                echoed = (got.id, got.slug, got.description, got.price_in_cents) == (product_id, slug, description, price)
                checks.check(
                    f"grpcio client: customer 1, {slug} costs {expected} with pct 0.1",
                    echoed and got.discount_value.value_in_cents == expected and abs(got.discount_value.pct - 0.1) < 1e-6,
                    str(got),
                )
            got = apply(stub, 2, 1, "iphone-x", "64GB, black and iOS 12", 99999)
            checks.check(
                "grpcio client: customer 2 gets a present but empty discount_value",
                got.HasField("discount_value") and got.discount_value == ecommerce_pb2.DiscountValue(),
                str(got),
            )
            try:
                stub.ApplyDiscount(ecommerce_pb2.DiscountRequest(), timeout=TIMEOUT)
                checks.check("grpcio client: an empty request is INVALID_ARGUMENT", False, "accepted")
            except grpc.RpcError as error:
                checks.check(
                    "grpcio client: an empty request is INVALID_ARGUMENT",
                    error.code() == grpc.StatusCode.INVALID_ARGUMENT,
                    f"{error.code()}: {error.details()}",
                )

            # 3. Health and reflection, queried from grpcio.
            health_stub = health_pb2_grpc.HealthStub(ch)
            for service in ("", "ecommerce.Discount"):
                status = health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status
                checks.check(
                    f"grpcio health check of {service!r} is SERVING",
                    status == health_pb2.HealthCheckResponse.SERVING,
                    health_pb2.HealthCheckResponse.ServingStatus.Name(status),
                )
            services = set(ProtoReflectionDescriptorDatabase(ch).get_services())
            checks.check(
                "grpcio reflection lists ecommerce.Discount and grpc.health.v1.Health",
                {"ecommerce.Discount", "grpc.health.v1.Health"} <= services,
                str(sorted(services)),
            )
            proto_file = ProtoReflectionDescriptorDatabase(ch).FindFileContainingSymbol("ecommerce.Discount")
            methods = [(m.name, m.input_type, m.output_type) for s in proto_file.service for m in s.method]
            checks.check(
                "grpcio reflection describes ApplyDiscount(DiscountRequest) returns (DiscountResponse)",
                ("ApplyDiscount", ".ecommerce.DiscountRequest", ".ecommerce.DiscountResponse") in methods,
                str(methods),
            )

            # The method this port added: several products in one call.
            request = ecommerce_pb2.DiscountsRequest(
                customer=ecommerce_pb2.Customer(id=1),
                products=[ecommerce_pb2.Product(id=i, slug=s, description=d, price_in_cents=p)
                          for i, s, d, p, _ in SEED_PRODUCTS],
            )
            priced = stub.ApplyDiscounts(request, timeout=TIMEOUT).products
            checks.check(
                "grpcio client: ApplyDiscounts prices the three seed products in one call, in order",
                [p.discount_value.value_in_cents for p in priced] == [e for *_, e in SEED_PRODUCTS],
                str(priced),
            )

        with channel(discount.port, with_certificate=False) as anonymous:
            try:
                ecommerce_pb2_grpc.DiscountStub(anonymous).ApplyDiscount(ecommerce_pb2.DiscountRequest(), timeout=TIMEOUT)
                checks.check("grpcio client without a certificate is refused", False, "it was served")
            except grpc.RpcError as error:
                checks.check(
                    "grpcio client without a certificate is refused",
                    error.code() == grpc.StatusCode.UNAVAILABLE,
                    f"{error.code()}: {error.details()}",
                )

        # A certificate from the same CA for a workload not on discount's
        # allow-list: authenticated, not authorized.
        intruder = "spiffe://ecommerce.local/intruder"
        issue_client(args.keys, "intruder", intruder)
        with channel(discount.port, client="intruder") as ch:
            stub = ecommerce_pb2_grpc.DiscountStub(ch)
            calls = {
                "ApplyDiscount": lambda: stub.ApplyDiscount(
                    ecommerce_pb2.DiscountRequest(customer=ecommerce_pb2.Customer(id=1),
                                                  product=ecommerce_pb2.Product(id=1, price_in_cents=1000)),
                    timeout=TIMEOUT),
                "ApplyDiscounts": lambda: stub.ApplyDiscounts(
                    ecommerce_pb2.DiscountsRequest(customer=ecommerce_pb2.Customer(id=1),
                                                   products=[ecommerce_pb2.Product(id=1, price_in_cents=1000)]),
                    timeout=TIMEOUT),
            }
            for method, call in calls.items():
                name = f"grpcio client with an unlisted identity: {method} is PERMISSION_DENIED naming it"
                try:
                    call()
                    checks.check(name, False, "it was served")
                except grpc.RpcError as error:
                    checks.check(
                        name,
                        error.code() == grpc.StatusCode.PERMISSION_DENIED and intruder in error.details()
                        and "--allow-client" in error.details(),
                        f"{error.code()}: {error.details()}",
                    )
            status = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="ecommerce.Discount"), timeout=TIMEOUT).status
            checks.check(
                "grpcio client with an unlisted identity: the health check is answered",
                status == health_pb2.HealthCheckResponse.SERVING,
                health_pb2.HealthCheckResponse.ServingStatus.Name(status),
            )

        # 2. Our catalog against a grpcio discount server, compared byte for
        #    byte with our catalog against our own discount. The Python server,
        #    like the seed's, has no ApplyDiscounts: the catalog must fall back
        #    to ApplyDiscount per product and still answer the same bytes.
        python_server, python_port = discount_server.start(args.keys)
        try:
            ours = start_catalog(args.bin_dir, args.keys, discount.port)
            started.append(ours)
            theirs = start_catalog(args.bin_dir, args.keys, python_port)
            started.append(theirs)
            for user_id in ("1", "2", "3", None):
                expected = http_get(ours.port, "/products", user_id)
                got = http_get(theirs.port, "/products", user_id)
                checks.check(
                    f"catalog with a grpcio discount, X-USER-ID {user_id}: same status, header and body as with ours",
                    got == expected and got[0] == 200,
                    f"ours {expected!r}, with grpcio {got!r}",
                )
            checks.check(
                "catalog with a grpcio discount: customer 1 gets the seed README's output",
                http_get(theirs.port, "/products", "1") == (200, "applied", SEED_CUSTOMER_1),
                repr(http_get(theirs.port, "/products", "1")),
            )
            ready = http_get(theirs.port, "/readyz")
            checks.check("catalog /readyz through a grpcio health service is 200", ready[0] == 200, repr(ready))

            # 4. The grpcio server as one replica among ours: the catalog
            #    sends it ApplyDiscount per product and ours ApplyDiscounts,
            #    and every listing is the same.
            mixed = start_our_catalog(
                args.bin_dir, args.keys, [python_port, discount.port],
                ("--discount-deadline", "5s", "--discount-server-name", "localhost"), log_level="info")
            started.append(mixed)
            deadline = time.monotonic() + 10
            while http_get(mixed.port, "/readyz")[2].count(" serving") < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            ready = http_get(mixed.port, "/readyz")
            checks.check(
                "catalog with a grpcio replica and one of ours: /readyz says both are serving",
                ready[0] == 200 and ready[2].startswith("ready: 2 of 2 discount replicas serving"),
                repr(ready),
            )
            answers = [http_get(mixed.port, "/products", "1") for _ in range(40)]
            checks.check(
                "catalog with a grpcio replica and one of ours: 40 listings for customer 1, all the seed's output",
                all(answer == (200, "applied", SEED_CUSTOMER_1) for answer in answers),
                repr([a for a in answers if a != (200, "applied", SEED_CUSTOMER_1)][:3]),
            )
        finally:
            python_server.stop(grace=None)
    except Exception as error:  # a set-up failure is a failed run, with its cause
        checks.check("set-up", False, f"{type(error).__name__}: {error}")
    finally:
        for service in reversed(started):
            service.stop()

    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
