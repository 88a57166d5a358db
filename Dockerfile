# The multinic image for those who build with Docker: the same static binaries at the same paths as
# `make image` (which needs no Docker; tools/imagebuild/dockerfile_test.go checks that the two agree), on an
# empty base, no shell. docker build -t ghcr.io/multinic/multinic:dev .
FROM golang:1.26.8 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/ ./cmd/multinic-agent ./cmd/multinic ./cmd/multinic-nri

FROM scratch
COPY --from=build --chmod=0755 /out/multinic-agent /usr/local/bin/multinic-agent
COPY --from=build --chmod=0755 /out/multinic /usr/local/bin/multinic
COPY --from=build --chmod=0755 /out/multinic-nri /usr/local/bin/multinic-nri
ENTRYPOINT ["/usr/local/bin/multinic-agent"]
