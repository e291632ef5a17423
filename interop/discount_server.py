"""A Discount service in Python grpcio, for the interop suite.

It implements the same rule as our Rust discount (customer 1, positive price,
10% off, truncated to the cent, in decimal arithmetic) so that our catalog can
be pointed at it and must produce byte-identical answers. It requires a
client certificate, as our discount does by default, and serves the standard
health service.
"""

from concurrent import futures
from decimal import Decimal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import ecommerce_pb2
import ecommerce_pb2_grpc

RATE = Decimal(10) / 100


def discount_for(customer_id: int, price_in_cents: int) -> ecommerce_pb2.DiscountValue:
    if customer_id != 1 or price_in_cents <= 0:
        return ecommerce_pb2.DiscountValue()
    price = Decimal(price_in_cents) / 100
    discounted = price - price * RATE
    return ecommerce_pb2.DiscountValue(pct=float(RATE), value_in_cents=int(discounted * 100))


class Discount(ecommerce_pb2_grpc.DiscountServicer):
    def ApplyDiscount(self, request, context):
        if not request.HasField("customer") or not request.HasField("product"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "customer and product are required")
        product = ecommerce_pb2.Product()
        product.CopyFrom(request.product)
        product.discount_value.CopyFrom(discount_for(request.customer.id, request.product.price_in_cents))
        return ecommerce_pb2.DiscountResponse(product=product)


def start(keys_dir: str) -> tuple[grpc.Server, int]:
    """Starts the server on 127.0.0.1 and a free port; returns it and the port."""

    def read(name: str) -> bytes:
        with open(f"{keys_dir}/{name}", "rb") as f:
            return f.read()

    credentials = grpc.ssl_server_credentials(
        [(read("private.key"), read("cert.pem"))],
        root_certificates=read("ca.pem"),
        require_client_auth=True,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    ecommerce_pb2_grpc.add_DiscountServicer_to_server(Discount(), server)
    health_servicer = health.HealthServicer()
    for service in ("", "ecommerce.Discount"):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port
