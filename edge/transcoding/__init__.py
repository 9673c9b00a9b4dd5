"""REST -> gRPC transcoding, grpc-gateway style: the contracts (discovery), their path templates, the route
specs they declare, the endpoint behind each route, and the route table that finds it."""
