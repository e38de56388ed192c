# check=error=true
# groupcast image: one static Go binary on distroless, nothing else.
#   docker build --build-arg VERSION=$(git rev-parse --short HEAD) -t groupcast .
# Needs BuildKit (the default builder since Docker 23) for the cache mount.

FROM golang:1.26 AS build
WORKDIR /src
# Modules go into a layer of their own: it is reused until go.mod or go.sum change,
# also on a fresh Cloud Build worker, where docker build --cache-from brings it back.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# Compiled packages go into a cache mount: it speeds up rebuilds on one machine and
# stays out of the image.
RUN --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/groupcast ./app

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/groupcast /groupcast
USER nonroot:nonroot
EXPOSE 8080
ENV PORT=8080
ENTRYPOINT ["/groupcast"]
