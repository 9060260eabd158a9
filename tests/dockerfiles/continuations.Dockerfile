FROM alpine
RUN --mount=type=cache,target=/root/.cache \
# a comment inside the continuation

    --mount=type=secret,id=npm_token,target=/root/.npmrc,uid=1000 --mount=type=secret,id=netrc,target=/root/.netrc,uid=1000 \
      --mount=type=secret,id=netrc,target=/etc/netrc,uid=1000 \
    npm ci
RUN echo --mount=type=secret,id=not_a_flag,mode=0777
