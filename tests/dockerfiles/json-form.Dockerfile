FROM alpine
RUN --mount=type=secret,id=npm_token,env=NPM_TOKEN,uid=1000 ["npm", "ci"]
RUN --mount="type=secret,id=npm_token,env=TOKEN,uid=1000" --network=none ["npm", "ci"]
