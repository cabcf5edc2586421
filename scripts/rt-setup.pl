#!/usr/bin/perl
# rt-setup.pl - test data for scripts/rt.sh, through RT's own API (RT_SITE_CONFIG selects the
# instance).
#   rt-setup.pl init                      users, rights, REST2 tokens, a ticket custom field
#                                         `Chat` of every queue and a user custom field
#                                         `Matrix`; prints one JSON line
#   rt-setup.pl queue NAME URL [SECRET]   a queue with the Switchboard webhook scrip (from
#                                         $RT_SCRIP_DIR) pointed at URL; prints the queue's ID
#   rt-setup.pl merge ID INTO             merges ticket ID into ticket INTO (REST2 cannot)
use strict;
use warnings;
use lib '/usr/local/share/request-tracker5/lib', '/usr/share/request-tracker5/lib';
use JSON ();
use RT;

RT::LoadConfig();
RT::Init();
my $system = RT->SystemUser;

sub ok { my ($what, $ok, $msg) = @_; die "rt-setup: $what: " . ($msg // 'failed') . "\n" unless $ok; $ok }

sub user {
    my (%a) = @_;
    my $password = delete $a{Password};
    my $u = RT::User->new($system);
    $u->Load($a{Name});
    unless ($u->id) { my ($id, $msg) = $u->Create(%a); ok("create user $a{Name}", $id, $msg) }
    ok("password of $a{Name}", $u->SetPassword($password)) unless $u->IsPassword($password);
    return $u;
}

sub grant {
    my ($principal, $object, @rights) = @_;
    for my $right (@rights) {
        next if $principal->HasRight(Right => $right, Object => $object);
        my ($ok, $msg) = $principal->GrantRight(Right => $right, Object => $object);
        ok("grant $right", $ok, $msg);
    }
}

sub token {
    my ($u) = @_;
    require RT::AuthToken;
    my $t = RT::AuthToken->new($system);
    my ($id, $msg, $secret) = $t->Create(Owner => $u->id, Description => 'switchboard-test');
    ok('token for ' . $u->Name, $id && $secret, $msg);
    return $secret;
}

my $command = shift // '';
if ($command eq 'init') {
    my $root = RT::User->new($system);
    $root->Load('root');
    ok('root password', $root->SetPassword('password')) unless $root->IsPassword('password');
    $root->SetEmailAddress('root@switchboard.test') unless ($root->EmailAddress // '') eq 'root@switchboard.test';
    my $agent = user(Name => 'agent', EmailAddress => 'agent@switchboard.test', RealName => 'Alice Agent',
        Privileged => 1, Password => 'agent-password');
    my $other = user(Name => 'agent2', EmailAddress => 'agent2@switchboard.test', RealName => 'Bob Agent',
        Privileged => 1, Password => 'agent2-password');
    my $customer = user(Name => 'customer', EmailAddress => 'customer@switchboard.test',
        RealName => 'Carl Customer', Privileged => 0, Password => 'customer-password');
    my $bot = user(Name => 'switchboard', EmailAddress => 'switchboard@switchboard.test',
        RealName => 'Switchboard', Privileged => 1, Password => 'switchboard-password');
    for my $a ($agent, $other) {
        grant($a->PrincipalObj, $RT::System, qw(SeeQueue ShowTicket CreateTicket ReplyToTicket
            CommentOnTicket OwnTicket TakeTicket StealTicket ReassignTicket ModifyTicket
            ShowTicketComments Watch WatchAsAdminCc ShowOutgoingEmail ModifySelf ManageAuthTokens));
    }
    # What the documentation asks for Switchboard's own user.
    grant($bot->PrincipalObj, $RT::System, qw(SeeQueue ShowTicket ShowTicketComments
        ReplyToTicket CommentOnTicket ModifyTicket ShowOutgoingEmail SeeCustomField));
    # A ticket custom field for every queue, for selecting tickets by a field.
    my $cf = RT::CustomField->new($system);
    $cf->LoadByName(Name => 'Chat', LookupType => RT::Ticket->CustomFieldLookupType);
    unless ($cf->id) {
        my ($id, $msg) = $cf->Create(Name => 'Chat', Type => 'FreeformSingle',
            LookupType => RT::Ticket->CustomFieldLookupType);
        ok('create custom field Chat', $id, $msg);
    }
    unless ($cf->IsAdded(0)) { my ($ok, $msg) = $cf->AddToObject(RT::Queue->new($system)); ok('apply Chat', $ok, $msg) }
    # A user custom field holding a user's Matrix ID.
    my $ucf = RT::CustomField->new($system);
    $ucf->LoadByName(Name => 'Matrix', LookupType => RT::User->CustomFieldLookupType);
    unless ($ucf->id) {
        my ($id, $msg) = $ucf->Create(Name => 'Matrix', Type => 'FreeformSingle',
            LookupType => RT::User->CustomFieldLookupType);
        ok('create custom field Matrix', $id, $msg);
    }
    unless ($ucf->IsAdded(0)) { my ($ok, $msg) = $ucf->AddToObject(RT::User->new($system)); ok('apply Matrix', $ok, $msg) }
    my $everyone = RT::Group->new($system);
    $everyone->LoadSystemInternalGroup('Everyone');
    grant($everyone->PrincipalObj, $RT::System, qw(CreateTicket ReplyToTicket));
    print JSON->new->canonical->encode({
        root     => { name => 'root', password => 'password', token => token($root) },
        agent    => { name => 'agent', email => $agent->EmailAddress, real_name => $agent->RealName,
                      password => 'agent-password', token => token($agent) },
        agent2   => { name => 'agent2', email => $other->EmailAddress, real_name => $other->RealName,
                      password => 'agent2-password', token => token($other) },
        customer => { name => 'customer', email => $customer->EmailAddress,
                      real_name => $customer->RealName, password => 'customer-password' },
        switchboard => { name => 'switchboard', token => token($bot) },
    }), "\n";
} elsif ($command eq 'queue') {
    my ($name, $url, $secret) = @ARGV;
    die "usage: rt-setup.pl queue NAME URL [SECRET]\n" unless defined $url;
    $secret //= '';
    my $queue = RT::Queue->new($system);
    $queue->Load($name);
    unless ($queue->id) {
        my ($id, $msg) = $queue->Create(Name => $name, CorrespondAddress => "$name\@switchboard.test",
            CommentAddress => "$name-comment\@switchboard.test");
        ok("create queue $name", $id, $msg);
    }
    my $dir = $ENV{RT_SCRIP_DIR} or die "rt-setup: RT_SCRIP_DIR is not set\n";
    my $read = sub { open my $f, '<', "$dir/$_[0]" or die "rt-setup: $dir/$_[0]: $!\n"; local $/; <$f> };
    my $action = $read->('action.pl');
    my $quote = sub { my $s = shift; $s =~ s/([\\'])/\\$1/g; "'$s'" };
    $action =~ s/^my \$url\s*=\s*'[^']*';/'my $url    = ' . $quote->($url) . ';'/me or die "rt-setup: no \$url in action.pl\n";
    $action =~ s/^my \$secret\s*=\s*'[^']*';/'my $secret = ' . $quote->($secret) . ';'/me or die "rt-setup: no \$secret in action.pl\n";
    my $scrip = RT::Scrip->new($system);
    my $description = "Switchboard webhook ($name)";
    $scrip->LoadByCols(Description => $description);
    if ($scrip->id) {
        ok('update the scrip', $scrip->SetCustomCommitCode($action)) if $scrip->CustomCommitCode ne $action;
        my $condition = $read->('condition.pl');
        ok('update the scrip', $scrip->SetCustomIsApplicableCode($condition))
            if $scrip->CustomIsApplicableCode ne $condition;
    } else {
        my ($id, $msg) = $scrip->Create(
            Queue => $queue->id, Description => $description,
            ScripCondition => 'User Defined', ScripAction => 'User Defined', Template => 'Blank',
            Stage => 'TransactionCreate', CustomIsApplicableCode => $read->('condition.pl'),
            CustomPrepareCode => 'return 1;', CustomCommitCode => $action);
        ok('create the scrip', $id, $msg);
    }
    print $queue->id, "\n";
} elsif ($command eq 'merge') {
    my ($id, $into) = @ARGV;
    die "usage: rt-setup.pl merge ID INTO\n" unless defined $into;
    my $ticket = RT::Ticket->new($system);
    $ticket->Load($id);
    ok("load ticket $id", $ticket->id);
    my ($ok, $msg) = $ticket->MergeInto($into);
    ok("merge $id into $into", $ok, $msg);
} else {
    die "usage: rt-setup.pl init | queue NAME URL [SECRET] | merge ID INTO\n";
}
