# Build: docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t sekisho .
# (the deploy/ manifests run this image; `sekisho version` prints VERSION, "dev" without it)
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/sekisho ./cmd/sekisho

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/sekisho /sekisho
# distroless "nonroot", numeric so that Kubernetes' runAsNonRoot can verify it
USER 65532:65532
ENTRYPOINT ["/sekisho"]
