# syntax=docker/dockerfile:1
#
# The canopy binary: `canopy migrate`, `canopy worker` (the default), `canopy gen`, ...
#   docker build -t canopy .
#   docker run --rm canopy --help

FROM golang:1.26-bookworm AS build
# go.mod may ask for a newer 1.26 patch release than the image has; let the go
# command fetch it instead of failing (the official image sets GOTOOLCHAIN=local).
ENV GOTOOLCHAIN=auto
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/canopy ./cmd/canopy

FROM alpine:3.22
# ca-certificates for TLS to managed Kafka/Postgres/ClickHouse, tzdata for
# time zones; busybox wget (part of alpine) serves the compose healthcheck.
RUN apk add --no-cache ca-certificates tzdata \
 && addgroup -S -g 10001 canopy \
 && adduser -S -D -u 10001 -G canopy -h /home/canopy canopy
COPY --from=build /out/canopy /usr/local/bin/canopy
USER canopy:canopy
# canopy.yaml is read from the working directory if present (or CANOPY_CONFIG).
WORKDIR /home/canopy
# /metrics, /healthz and /readyz of `canopy worker`. The binary listens on
# 127.0.0.1:9464 unless told otherwise, which no other container reaches:
# this port is only served with CANOPY_HTTP_ADDR=0.0.0.0:9464 (as
# docker-compose.yml sets for the worker). /debug/pprof/ stays off unless
# CANOPY_HTTP_PPROF=true.
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/canopy"]
CMD ["worker"]
