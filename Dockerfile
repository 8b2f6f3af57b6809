# Build: docker build -t sekisho .   (the deploy/ manifests run this image)
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/sekisho ./cmd/sekisho

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/sekisho /sekisho
USER nonroot
ENTRYPOINT ["/sekisho"]
