FROM alpine AS base
ENV NPMRC=/root/.npmrc
RUN --mount=type=secret,id=npm_token,target=${NPMRC},uid=1000 true

FROM base AS child
RUN --mount=type=secret,id=npm_token,target=${NPMRC},uid=1000 true

FROM alpine AS other
RUN --mount=type=secret,id=npm_token,target=${NPMRC},uid=1000 true
RUN --mount=type=secret,id=pypi_token,required=true,uid=1000,mode=0600 true
